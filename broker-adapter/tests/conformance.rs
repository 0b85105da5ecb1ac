//! The broker conformance suite (`broker_adapter::testing::conformance`),
//! run against every broker: the embedded one, a real Redis and a real
//! three-master Redis Cluster, each test on its own servers.

use broker_adapter::testing::conformance::{self, Subject};
use broker_adapter::testing::{operations, presence};

macro_rules! suite {
    ($broker:ident, $make:expr) => {
        mod $broker {
            use super::*;

            async fn subject() -> Subject {
                let subject = tokio::task::spawn_blocking(|| $make)
                    .await
                    .expect("started");
                subject.ready().await;
                subject
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn offsets_without_holes_in_order() {
                conformance::offsets_without_holes_in_order(&subject().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn only_subscribed_channels_arrive() {
                conformance::only_subscribed_channels_arrive(&subject().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn history_is_bounded_and_read_after_an_offset() {
                conformance::history_is_bounded_and_read_after_an_offset(&subject().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn new_streams_start_at_zero_and_history_can_be_off() {
                conformance::new_streams_start_at_zero_and_history_can_be_off(&subject().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn messages_reach_the_node_named() {
                operations::messages_reach_the_node_named(&subject().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn announced_nodes_are_listed_until_they_lapse() {
                operations::announced_nodes_are_listed_until_they_lapse(&subject().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn removing_history_ends_the_stream() {
                operations::removing_history_ends_the_stream(&subject().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn idempotent_publications_happen_once() {
                operations::idempotent_publications_happen_once(&subject().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn reads_and_subscribes_leave_no_state() {
                conformance::reads_and_subscribes_leave_no_state(&subject().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_idle_stream_expires_into_a_new_epoch() {
                conformance::an_idle_stream_expires_into_a_new_epoch(&subject().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn restart_stream_starts_one_new_epoch() {
                conformance::restart_stream_starts_one_new_epoch(&subject().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn presence_members_counts_and_events() {
                presence::members_counts_and_events(&subject().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn presence_of_a_silent_node_ends_after_its_ttl() {
                presence::a_silent_node_leaves_after_its_ttl(&subject().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn outages_refuse_and_recover() {
                let mut subject = subject().await;
                conformance::outages_refuse_and_recover(&mut subject).await;
            }
        }
    };
}

suite!(memory, Subject::memory());
suite!(redis, Subject::redis());
suite!(cluster, Subject::cluster());
