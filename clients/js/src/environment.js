// Where the Client learns about online/offline and page-visibility changes: the browser's
// window and document by default, nothing elsewhere (the `environment` option replaces it).

/** Browser online/offline and visibility events; none elsewhere. */
export function defaultEnvironment() {
  const win = typeof window !== 'undefined' && typeof window.addEventListener === 'function' ? window : null;
  const doc = typeof document !== 'undefined' && typeof document.addEventListener === 'function' ? document : null;
  return {
    isOnline: () => typeof navigator === 'undefined' || navigator.onLine !== false,
    listen({ online, offline, visible }) {
      const onVisibility = () => {
        if (doc.visibilityState === 'visible') visible();
      };
      win?.addEventListener('online', online);
      win?.addEventListener('offline', offline);
      doc?.addEventListener('visibilitychange', onVisibility);
      return () => {
        win?.removeEventListener('online', online);
        win?.removeEventListener('offline', offline);
        doc?.removeEventListener('visibilitychange', onVisibility);
      };
    },
  };
}

/** `environment: false`: always online, no events. */
export const noEnvironment = { isOnline: () => true, listen: () => () => {} };
