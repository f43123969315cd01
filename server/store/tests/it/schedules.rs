//! The store's side of schedules, on SQLite and (postgres profile) PostgreSQL: claims that two
//! nodes asking at once never share, that lapse when their holder dies; an advance only by
//! the holder, which a change made meanwhile outranks; and one job per fire, however many try.

use crate::common;

use chrono::{DateTime, Duration, Utc};
use outpost_store::domain::{Actor, AuditAction, AuditEvent, AuditTarget};
use outpost_store::{
    Advance, AuditFilter, AuditRecord, EventFilter, Fire, FireJob, NewEvent, NewJob, NewRun,
    NewSchedule, Store, schedule,
};
use serde_json::json;

fn audit(tenant: &str) -> AuditRecord {
    AuditRecord {
        tenant_id: tenant.into(),
        actor: Actor::system("test", "test"),
        address: None,
        event: AuditEvent::new(AuditAction::ScheduleCreate, AuditTarget::Schedule, ""),
    }
}

async fn schedule_due(
    store: &Store,
    tenant: &str,
    name: &str,
    at: DateTime<Utc>,
) -> schedule::Model {
    store
        .create_schedule(
            NewSchedule {
                tenant_id: tenant.into(),
                name: name.into(),
                cron: "* * * * *".into(),
                timezone: "UTC".into(),
                command: "ping".into(),
                data: json!({}),
                sealed_params: None,
                target: json!({"all": true}),
                timeout_s: None,
                ttl_s: None,
                enabled: true,
                missed: "skip".into(),
                concurrency: "allow".into(),
                webhook_url: None,
                role: "admin".into(),
                created_by: "test".into(),
                next_fire_at: Some(at),
            },
            audit(tenant),
        )
        .await
        .expect("create")
        .expect("stored")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_claiming_at_once_share_no_schedule_and_a_dead_node_s_claims_lapse() {
    let (fresh, store, tenant) = common::fresh_store().await;
    let other = Store::open(&fresh.location)
        .await
        .expect("second connection");
    let now = Utc::now();
    for i in 0..60 {
        schedule_due(
            &store,
            &tenant,
            &format!("s{i:02}"),
            now - Duration::seconds(1),
        )
        .await;
    }
    // Not due yet: never claimed.
    schedule_due(&store, &tenant, "later", now + Duration::hours(1)).await;

    let (a, b) = tokio::join!(
        store.claim_due_schedules("node-a", now, 40),
        other.claim_due_schedules("node-b", now, 40)
    );
    let (a, b) = (a.expect("claim a"), b.expect("claim b"));
    let mut ids: Vec<&str> = a.iter().chain(&b).map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids.len(),
        60,
        "every due schedule claimed: {} + {}",
        a.len(),
        b.len()
    );
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 60, "no schedule claimed by both nodes");
    assert!(a.iter().all(|s| s.claimed_by.as_deref() == Some("node-a")));

    // Held: a third node gets nothing until the claims lapse (node a and b "died").
    assert!(
        store
            .claim_due_schedules("node-c", now, 100)
            .await
            .expect("claim")
            .is_empty()
    );
    let later = now + Duration::seconds(31);
    let taken = store
        .claim_due_schedules("node-c", later, 100)
        .await
        .expect("claim");
    assert_eq!(taken.len(), 60);
    assert!(taken.iter().all(|s| s.name != "later"));

    // Only the holder advances; a change made meanwhile keeps its own next fire.
    let fired = &taken[0];
    let next = now + Duration::minutes(1);
    assert!(
        !store
            .advance_schedule(fired, "node-a", Some(next), None)
            .await
            .expect("advance")
    );
    assert!(
        store
            .advance_schedule(fired, "node-c", Some(next), None)
            .await
            .expect("advance")
    );
    let stored = store
        .get_schedule(&tenant, &fired.id)
        .await
        .expect("get")
        .expect("row");
    assert_eq!(
        stored.next_fire_at.map(|t| t.timestamp_micros()),
        Some(next.timestamp_micros())
    );
    assert!(stored.claimed_by.is_none());

    let changed_fire = &taken[1];
    let mut edited = changed_fire.clone();
    edited.next_fire_at = Some(now + Duration::days(1));
    store
        .update_schedule(edited, audit(&tenant))
        .await
        .expect("update")
        .expect("exists")
        .expect("stored");
    assert!(
        store
            .advance_schedule(
                changed_fire,
                "node-c",
                Some(next),
                Some((now, "job-1".into()))
            )
            .await
            .expect("advance")
    );
    let stored = store
        .get_schedule(&tenant, &changed_fire.id)
        .await
        .expect("get")
        .expect("row");
    assert_eq!(
        stored.next_fire_at.map(|t| t.timestamp()),
        Some((now + Duration::days(1)).timestamp()),
        "the change's next fire stands"
    );
    assert_eq!(stored.last_job_id.as_deref(), Some("job-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_makes_one_job_however_many_try() {
    let (fresh, store, tenant) = common::fresh_store().await;
    let other = Store::open(&fresh.location)
        .await
        .expect("second connection");
    let s = schedule_due(&store, &tenant, "s", Utc::now()).await;
    let at = DateTime::parse_from_rfc3339("2026-11-01T06:30:00Z")
        .expect("time")
        .with_timezone(&Utc);
    let new = || NewJob {
        tenant_id: tenant.clone(),
        command: "ping".into(),
        data: json!({}),
        sealed_params: None,
        target: json!({"all": true}),
        timeout_s: 60,
        ttl_s: 60,
        idempotency_key: None,
        request_fingerprint: None,
        webhook_url: None,
        fire: Some(Fire {
            schedule_id: s.id.clone(),
            scheduled_for: Some(at),
            catch_up: false,
        }),
        note: Some("no agent".into()),
        rerun_of: None,
    };
    let mut tries = Vec::new();
    for i in 0..8 {
        let store = if i % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        let job = new();
        tries.push(tokio::spawn(async move {
            store.create_job(job, Vec::new()).await
        }));
    }
    let mut ids = Vec::new();
    let mut created = 0;
    for t in tries {
        let (job, runs, made) = t.await.expect("task").expect("create");
        assert!(runs.is_empty());
        assert_eq!(
            job.status, "failed",
            "a job without runs is over, and failed"
        );
        created += usize::from(made);
        ids.push(job.id);
    }
    ids.dedup();
    assert_eq!(created, 1, "one creation");
    assert_eq!(ids.len(), 1, "every try answered the same job");
    // A run now of the same schedule (no instant) is another job each time.
    let mut now_job = new();
    now_job.fire.as_mut().expect("fire").scheduled_for = None;
    let (first, _, made_first) = store
        .create_job(now_job.clone(), Vec::new())
        .await
        .expect("run now");
    let (second, _, made_second) = store
        .create_job(now_job, Vec::new())
        .await
        .expect("run now");
    assert!(made_first && made_second);
    assert_ne!(first.id, second.id);
}

/// Two nodes write the same fires as batches at once (a claim that lapsed while its holder
/// was still writing): each fire has one job, both answers name it, its audit row and its
/// event are recorded once, and only the holder advances the schedules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_batches_of_the_same_fires_make_each_job_once() {
    let (fresh, store, tenant) = common::fresh_store().await;
    let other = Store::open(&fresh.location)
        .await
        .expect("second connection");
    let now = Utc::now();
    let mut schedules = Vec::new();
    for i in 0..20 {
        schedules.push(
            schedule_due(
                &store,
                &tenant,
                &format!("b{i:02}"),
                now - Duration::seconds(1),
            )
            .await,
        );
    }
    let claimed = store
        .claim_due_schedules("node-a", now, 100)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 20);
    let at = now - Duration::seconds(1);
    let fires = |refused: bool| -> Vec<FireJob> {
        claimed
            .iter()
            .enumerate()
            .map(|(i, s)| FireJob {
                job_id: outpost_store::new_id(),
                new: NewJob {
                    tenant_id: tenant.clone(),
                    command: "ping".into(),
                    data: json!({}),
                    sealed_params: None,
                    target: json!({"all": true}),
                    timeout_s: 60,
                    ttl_s: 60,
                    idempotency_key: None,
                    request_fingerprint: None,
                    webhook_url: None,
                    fire: Some(Fire {
                        schedule_id: s.id.clone(),
                        scheduled_for: Some(at),
                        catch_up: false,
                    }),
                    note: None,
                    rerun_of: None,
                },
                // Half of the fires with a run refused at once, half without runs.
                runs: if refused && i % 2 == 0 {
                    vec![NewRun {
                        agent_id: "gone".into(),
                        refused: Some(("forbidden".into(), "test".into())),
                        key_id: None,
                    }]
                } else {
                    Vec::new()
                },
                audit: audit(&tenant),
            })
            .collect()
    };
    let events = || -> Vec<NewEvent<'_>> {
        claimed
            .iter()
            .map(|s| NewEvent {
                tenant_id: &tenant,
                kind: "schedule.missed",
                subject: ("schedule", &s.id, &s.name),
                summary: "test".into(),
                detail: json!({}),
                dedup_key: Some(format!("schedule.missed:{}:{at}", s.id)),
            })
            .collect()
    };
    let advances = || -> Vec<Advance<'_>> {
        claimed
            .iter()
            .enumerate()
            .map(|(i, s)| Advance {
                fired: s,
                next_fire_at: Some(now + Duration::minutes(1)),
                last: Some(i),
            })
            .collect()
    };
    let audit_rows = || async {
        store
            .list_audit(
                &tenant,
                &AuditFilter {
                    action: Some("schedule.create".into()),
                    limit: 1000,
                    ..Default::default()
                },
            )
            .await
            .expect("audit")
            .len()
    };
    let audited_before = audit_rows().await;
    let (a, b) = tokio::join!(
        store.fire_batch("node-a", fires(true), events(), advances()),
        other.fire_batch("node-b", fires(true), events(), advances())
    );
    let ((made_a, lost_a), (made_b, lost_b)) = (a.expect("batch a"), b.expect("batch b"));
    assert_eq!((lost_a, lost_b), (0, 20), "only the holder advances");
    let mut created = 0;
    for (x, y) in made_a.iter().zip(&made_b) {
        assert_eq!(x.job.id, y.job.id, "both answers name the fire's one job");
        assert_eq!(x.job.schedule_id, y.job.schedule_id);
        assert!(x.created != y.created, "exactly one of the two made it");
        created += usize::from(x.created) + usize::from(y.created);
        assert_eq!(x.runs.len(), y.runs.len());
        assert_eq!(
            x.job.status, "failed",
            "no run, or its one run refused: over"
        );
    }
    assert_eq!(created, 20);
    assert_eq!(
        audit_rows().await - audited_before,
        20,
        "one audit row per job"
    );
    let recorded = store
        .list_events(
            &tenant,
            &EventFilter {
                kind: Some("schedule.missed".into()),
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .expect("events");
    assert_eq!(recorded.len(), 20, "one event per fire");
    for s in &claimed {
        let stored = store
            .get_schedule(&tenant, &s.id)
            .await
            .expect("read")
            .expect("there");
        assert_eq!(stored.claimed_by, None, "claim let go");
        assert_eq!(
            stored.next_fire_at.map(|t| t.timestamp()),
            Some((now + Duration::minutes(1)).timestamp())
        );
        let job = made_a
            .iter()
            .find(|m| m.job.schedule_id.as_deref() == Some(s.id.as_str()))
            .expect("its job");
        assert_eq!(stored.last_job_id.as_deref(), Some(job.job.id.as_str()));
    }
}
