//! Store tests for decision events, against real PostgreSQL.

use chrono::{TimeZone as _, Utc};
use palisade_proto::v1;
use sqlx::PgPool;

use super::EventQuery;
use crate::store::{Store, timestamp};

fn event(policy: &str, verdict: v1::Verdict, second: i64) -> v1::DecisionEvent {
    v1::DecisionEvent {
        policy: policy.into(),
        revision: 2,
        rule_id: "block".into(),
        verdict: verdict as i32,
        hook: "cgroup/connect4".into(),
        pid: 42,
        comm: "curl".into(),
        uid: 1000,
        cgroup_id: u64::MAX - 1,
        address: "10.1.2.3".into(),
        port: 443,
        protocol: v1::Protocol::Tcp as i32,
        bundle_digest: "abc".into(),
        time: Some(timestamp(Utc.timestamp_opt(1_800_000_000 + second, 0).single().expect("time"))),
        ..Default::default()
    }
}

#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn events_round_trip_every_field_including_u64_cgroup_ids_and_file_access(pool: PgPool) {
    let store = Store::new(pool);
    let mut file = event("files", v1::Verdict::Deny, 1);
    file.hook = "lsm/file_open".into();
    file.path = "/etc/passwd".into();
    file.access = vec![v1::FileAccess::Read as i32, v1::FileAccess::Write as i32];
    let sent = [event("web", v1::Verdict::Deny, 0), file];
    assert_eq!(store.insert_events("n1", &sent).await.expect("insert"), 2);
    let (mut got, more) = store.list_events(&EventQuery::default(), 10).await.expect("list");
    assert!(!more);
    got.reverse();
    for (got, sent) in got.iter().zip(&sent) {
        assert!(got.id > 0 && got.received_at.is_some());
        let comparable = v1::DecisionEvent { id: 0, node: String::new(), received_at: None, ..got.clone() };
        assert_eq!(&comparable, sent);
        assert_eq!(got.node, "n1", "the node comes from the report, not the event");
    }
    assert_eq!(store.max_event_id().await.expect("max"), i64::try_from(got[1].id).expect("id"));
}

#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn list_events_filters_paginates_newest_first_and_catches_up_oldest_first(pool: PgPool) {
    let store = Store::new(pool);
    assert_eq!(store.max_event_id().await.expect("max"), 0);
    assert_eq!(store.insert_events("n1", &[]).await.expect("nothing"), 0);
    let batch: Vec<_> = (0..5)
        .map(|i| {
            event(if i % 2 == 0 { "web" } else { "db" }, if i < 3 { v1::Verdict::Deny } else { v1::Verdict::Allow }, i)
        })
        .collect();
    store.insert_events("n1", &batch).await.expect("insert");
    store.insert_events("n2", &[event("web", v1::Verdict::Deny, 9)]).await.expect("insert");

    let ids = |events: &[v1::DecisionEvent]| events.iter().map(|e| e.id).collect::<Vec<_>>();
    let (all, _) = store.list_events(&EventQuery::default(), 100).await.expect("all");
    assert_eq!(all.len(), 6);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first: {:?}", ids(&all));

    let q = |f: fn(&mut EventQuery)| {
        let mut q = EventQuery::default();
        f(&mut q);
        q
    };
    let (web, _) = store.list_events(&q(|q| q.policy = Some("web".into())), 100).await.expect("web");
    assert!(web.len() == 4 && web.iter().all(|e| e.policy == "web"));
    let (n2, _) = store.list_events(&q(|q| q.node = Some("n2".into())), 100).await.expect("n2");
    assert_eq!(n2.len(), 1);
    let (allowed, _) =
        store.list_events(&q(|q| q.verdict = Some(v1::Verdict::Allow as i32)), 100).await.expect("allow");
    assert_eq!(allowed.len(), 2);
    let since = Utc.timestamp_opt(1_800_000_002, 0).single();
    let until = Utc.timestamp_opt(1_800_000_004, 0).single();
    let (window, _) =
        store.list_events(&EventQuery { since, until, ..EventQuery::default() }, 100).await.expect("window");
    assert_eq!(window.len(), 2, "since is inclusive, until exclusive");

    let (page1, more) = store.list_events(&EventQuery::default(), 4).await.expect("page 1");
    assert!(more);
    let last = i64::try_from(page1[3].id).expect("id");
    let (page2, more) =
        store.list_events(&EventQuery { before_id: Some(last), ..EventQuery::default() }, 4).await.expect("page 2");
    assert!(!more);
    assert_eq!([ids(&page1), ids(&page2)].concat(), ids(&all), "pages cover everything once");

    let first = i64::try_from(all[5].id).expect("id");
    let (catch_up, _) =
        store.list_events(&EventQuery { after_id: Some(first), ..EventQuery::default() }, 100).await.expect("after");
    assert!(catch_up.windows(2).all(|w| w[0].id < w[1].id), "catch-up is oldest first");
    assert_eq!(catch_up.len(), 5);
}

async fn partitions(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'events'::regclass ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("partitions")
}

/// Stores an event as if it had arrived `days_ago` days ago.
async fn arrived(pool: &PgPool, days_ago: i32) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO events (node, policy, revision, rule_id, verdict, hook, pid, comm, uid, cgroup_id, address, \
           port, protocol, bundle_digest, event_time, received_at) \
         VALUES ('n1', 'web', 1, 'block', 1, 'cgroup/connect4', 1, 'curl', 0, 1, '10.1.2.3', 443, 6, 'abc', \
           now(), now() - make_interval(days => $1)) RETURNING id",
    )
    .bind(days_ago)
    .fetch_one(pool)
    .await
    .expect("insert an old event")
}

#[sqlx::test(migrator = "crate::MIGRATOR")]
async fn retention_drops_whole_expired_partitions_and_keeps_the_rest(pool: PgPool) {
    let store = Store::new(pool.clone());
    let today = Utc::now().date_naive();
    let name = |days: i64| format!("events_{}", (today - chrono::TimeDelta::days(days)).format("%Y%m%d"));
    // Migrated: today and three days ahead exist.
    let migrated = partitions(&pool).await;
    for ahead in 0..=3 {
        assert!(migrated.contains(&name(-ahead)), "{migrated:?} lacks {}", name(-ahead));
    }
    sqlx::query("SELECT palisade_ensure_event_partitions(current_date - 10, current_date)")
        .execute(&pool)
        .await
        .expect("old partitions");
    let ids = [arrived(&pool, 10).await, arrived(&pool, 5).await, arrived(&pool, 1).await, arrived(&pool, 0).await];
    let (created, dropped) =
        store.maintain_event_partitions(Some(std::time::Duration::from_hours(72))).await.expect("maintain");
    assert_eq!(created, 0, "nothing was missing");
    // Days −10 … −4 ended at least three days ago.
    assert_eq!(dropped, 7);
    let kept: Vec<i64> = sqlx::query_scalar("SELECT id FROM events ORDER BY id").fetch_all(&pool).await.expect("ids");
    assert_eq!(kept, ids[2..], "the events of 10 and 5 days ago went with their partitions");
    let after = partitions(&pool).await;
    assert!(!after.contains(&name(4)) && after.contains(&name(3)) && after.contains(&name(-3)), "{after:?}");
    // Ids keep growing past the dropped ones, and new events land in today's partition.
    let stored = store.insert_events("n1", &[event("web", v1::Verdict::Deny, 0)]).await.expect("insert");
    assert_eq!(stored, 1);
    let newest: i64 = sqlx::query_scalar("SELECT max(id) FROM events").fetch_one(&pool).await.expect("max");
    assert!(newest > ids[3]);
    // No retention: nothing is dropped; a missing day ahead is created.
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {}", name(-3)))).execute(&pool).await.expect("drop one");
    assert_eq!(store.maintain_event_partitions(None).await.expect("maintain"), (1, 0));
    assert_eq!(partitions(&pool).await, after);
}
