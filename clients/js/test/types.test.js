// The TypeScript declarations compile against a usage example (typescript is a devDependency).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

test('pubsub.d.ts type-checks the documented usage (strict)', () => {
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  try {
    execFileSync(process.execPath, [tsc, '-p', join(root, 'test/types')], { cwd: root, encoding: 'utf8', stdio: 'pipe' });
  } catch (err) {
    assert.fail(`tsc failed:\n${err.stdout}${err.stderr}`);
  }
});

test('package.json points at the module and its declarations', async () => {
  const { readFileSync, existsSync } = await import('node:fs');
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
  assert.equal(pkg.type, 'module');
  assert.equal(pkg.exports['.'].types, './src/pubsub.d.ts');
  assert.equal(pkg.exports['.'].default, './src/pubsub.js');
  for (const file of pkg.files) assert.ok(existsSync(join(root, file)), `${file} exists`);
  assert.deepEqual(Object.keys(pkg.dependencies ?? {}), [], 'no runtime dependencies');
  const self = await import('@pubsub-gateway/client');
  assert.equal(typeof self.Client, 'function');
});
