//! What every lbfabric daemon does the same way as a process: stop on
//! SIGINT or SIGTERM, and read `--labels key=value` flags.

use std::collections::BTreeMap;

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            // Without a SIGTERM handler, SIGINT still stops the process.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

/// `key=value` items (as given to `--labels`), checked as labels are.
pub fn label_flags(
    flag: &str,
    items: &[String],
) -> Result<BTreeMap<String, String>, crate::FieldError> {
    let mut labels = BTreeMap::new();
    for item in items {
        let Some((k, v)) = item.split_once('=') else {
            return Err(crate::FieldError::new(
                flag,
                format!("{item:?}: expected key=value"),
            ));
        };
        labels.insert(k.to_string(), v.to_string());
    }
    crate::convert::labels(flag, labels)
}
