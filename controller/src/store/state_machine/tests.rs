use super::*;
use crate::state::{Agent, Command};
use lb_proto::pb;

fn entry(index: u64, cmd: Command) -> Entry {
    Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(cmd),
    }
}

/// The `i`-th of many services, each on a VIP of its own.
fn web(i: usize) -> Service {
    let vip = format!("10.1.{}.{}", i / 250, i % 250 + 1);
    crate::state::tests::service(&format!("web{i:05}"), &vip)
}

/// The revisions of the events in memory.
fn in_memory(sm: &StateMachineStore) -> Vec<u64> {
    let shared = sm.shared();
    let data = shared.read();
    data.state.events.iter().map(|e| e.revision).collect()
}

/// The revisions of the event rows in the store.
fn stored_events(sm: &StateMachineStore) -> Vec<u64> {
    let txn = sm.db.begin_read().unwrap();
    let table = txn.open_table(EVENTS).unwrap();
    let revisions = table.iter().unwrap().map(|r| r.unwrap().0.value());
    revisions.collect()
}

/// Past a full history, the event rows that fell out of it are deleted
/// a batch at a time, and a restarted node reads back the history
/// alone, not the rows still waiting.
#[tokio::test]
async fn events_past_the_history_are_trimmed_in_batches_and_not_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let full = crate::state::EVENT_HISTORY;
    let (history, rows_before, rows_after) = {
        let (_log, mut sm) = super::super::open(dir.path()).unwrap();
        // An import: one event per service, a full history.
        let services = (0..full).map(web).collect();
        let import = Command::ApplyServices {
            services,
            replace: false,
        };
        sm.apply([entry(1, import)]).await.unwrap();
        let create = |i: usize| entry(i as u64 + 2, Command::CreateService { service: web(i) });
        sm.apply([create(full)]).await.unwrap();
        // One row out of the history: it waits for the batch.
        let rows_before = stored_events(&sm);
        for i in full + 1..full + EVENT_ROWS_TRIMMED as usize {
            sm.apply([create(i)]).await.unwrap();
        }
        let history = in_memory(&sm);
        (history, rows_before, stored_events(&sm))
    };
    assert_eq!(history.len(), full);
    assert_eq!(rows_before.len(), full + 1, "the first row out waits");
    assert_eq!(rows_after.first(), history.first(), "the batch went");
    assert_eq!(rows_after.len(), full);
    // Left waiting in the table, a row is not read back.
    let (log, mut sm) = super::super::open(dir.path()).unwrap();
    let next = full + EVENT_ROWS_TRIMMED as usize;
    sm.apply([entry(
        next as u64 + 2,
        Command::CreateService { service: web(next) },
    )])
    .await
    .unwrap();
    let history = in_memory(&sm);
    assert_eq!(stored_events(&sm).len(), full + 1);
    drop((log, sm));
    let (_log, sm) = super::super::open(dir.path()).unwrap();
    let read = in_memory(&sm);
    assert_eq!(read, history);
}

/// What a restarted node reads back is the configuration and the
/// agents as they were: an agent's backend stays the agent's (it is not
/// stored as a listed realserver of the service), with its drain.
#[tokio::test]
async fn the_stored_state_reads_back_as_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::try_from(pb::Service {
        name: "web".into(),
        virtual_address: Some(pb::service::VirtualAddress::Endpoint(pb::Endpoint {
            address: "10.1.0.100".into(),
            port: 80,
            protocol: "tcp".into(),
        })),
        mode: "dr".into(),
        ..Default::default()
    })
    .unwrap();
    service
        .realserver_selector
        .insert("pool".into(), "web".into());
    let agent = Agent {
        node_id: "rs1".into(),
        address: "10.1.0.11".parse().unwrap(),
        labels: [("pool".to_string(), "web".to_string())].into(),
        unhealthy: Default::default(),
        draining: false,
        drained: false,
        lost: false,
    };
    let applied = {
        let (_log, mut sm) = super::super::open(dir.path()).unwrap();
        sm.apply([
            entry(1, Command::CreateService { service }),
            entry(2, Command::RegisterRealServer { agent }),
            entry(
                3,
                Command::SetAgentDrain {
                    node_id: "rs1".into(),
                    drain: true,
                },
            ),
        ])
        .await
        .unwrap();
        let state = sm.shared().read().state.clone();
        state
    };
    assert_eq!(
        applied
            .effective_services()
            .next()
            .unwrap()
            .realservers
            .len(),
        1
    );
    let (_log, sm) = super::super::open(dir.path()).unwrap();
    let read = sm.shared().read().state.clone();
    assert!(
        read.services["web"].realservers.is_empty(),
        "{:?}",
        read.services["web"]
    );
    assert_eq!(read.services, applied.services);
    assert_eq!(read.agents, applied.agents);
    assert!(read.agents["rs1"].drained);
    assert_eq!(read.revision, applied.revision);
}
