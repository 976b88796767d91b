//! Tables of the list commands: services, realservers, cluster members,
//! join tokens.

use lb_proto::pb;

use super::{endpoint, persistence, source, table, virtual_address};

/// `lbctl service list`.
pub fn services(resp: &pb::ListServicesResponse) {
    let rows: Vec<Vec<String>> = resp
        .services
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                virtual_address(s),
                s.scheduler.clone(),
                s.mode.clone(),
                persistence(s),
                s.realservers.len().to_string(),
                s.mod_revision.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "VIRTUAL ADDRESS",
            "SCHED",
            "MODE",
            "PERSIST",
            "REALSERVERS",
            "REVISION",
        ],
        &rows,
    );
}

/// `lbctl realserver list`.
pub fn realservers(resp: &pb::ListRealServersResponse) {
    let rows: Vec<Vec<String>> = resp
        .realservers
        .iter()
        .filter_map(|e| {
            let rs = e.realserver.as_ref()?;
            Some(vec![
                e.service.clone(),
                endpoint(&rs.address, rs.port),
                rs.weight.unwrap_or(1).to_string(),
                rs.admin_state.clone(),
                rs.upper_threshold.to_string(),
                rs.lower_threshold.to_string(),
                e.health.clone(),
                source(&e.agent),
            ])
        })
        .collect();
    table(
        &[
            "SERVICE",
            "REALSERVER",
            "WEIGHT",
            "STATE",
            "UPPER",
            "LOWER",
            "HEALTH",
            "SOURCE",
        ],
        &rows,
    );
}

/// `lbctl cluster status` and the membership commands.
pub fn cluster(status: &pb::ClusterStatus) {
    let leader = if status.has_leader {
        format!("leader {} at {}", status.leader_id, status.leader_address)
    } else {
        "no leader".to_string()
    };
    outln!(
        "node {} is {} (term {}), {leader}",
        status.node_id,
        status.state,
        status.term
    );
    outln!(
        "revision {}, log last {} applied {} snapshot {} purged {}",
        status.revision,
        status.last_log_index,
        status.last_applied_index,
        status.snapshot_index,
        status.purged_index
    );
    let rows: Vec<Vec<String>> = status
        .members
        .iter()
        .map(|m| vec![m.node_id.to_string(), m.address.clone(), m.role.clone()])
        .collect();
    table(&["ID", "ADDRESS", "ROLE"], &rows);
}

/// `lbctl token list` (and what create and delete leave).
pub fn tokens(list: &pb::ListJoinTokensResponse) {
    let rows: Vec<Vec<String>> = list
        .tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.role.clone(),
                if t.node_id.is_empty() {
                    "*".into()
                } else {
                    t.node_id.clone()
                },
                t.uses_left.to_string(),
                from_now(t.expires_at_ms),
                t.joined.join(","),
            ]
        })
        .collect();
    table(
        &["ID", "ROLE", "NODE", "USES LEFT", "EXPIRES", "JOINED"],
        &rows,
    );
}

pub fn admins(list: &pb::ListAdminsResponse) {
    let at = |ms: u64| {
        if ms == 0 {
            "-".to_string()
        } else {
            from_now(ms)
        }
    };
    let rows: Vec<Vec<String>> = list
        .admins
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                at(a.issued_at_ms),
                if a.issued_by.is_empty() {
                    "-".into()
                } else {
                    a.issued_by.clone()
                },
                at(a.expires_at_ms),
                at(a.revoked_at_ms),
            ]
        })
        .collect();
    table(&["NAME", "ISSUED", "BY", "EXPIRES", "REVOKED"], &rows);
}

/// "in 59m" / "3m ago" for a Unix-milliseconds time.
pub fn from_now(at_ms: u64) -> String {
    let now = lb_proto::pki::unix_ms(std::time::SystemTime::now());
    let span = |ms: u64| match ms / 1000 {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    };
    if at_ms >= now {
        format!("in {}", span(at_ms - now))
    } else {
        format!("{} ago", span(now - at_ms))
    }
}

pub fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s
    }
}
