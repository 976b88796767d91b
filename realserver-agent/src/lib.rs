//! lb-realserver: prepares a realserver host for the services it backs.
//!
//! [`agent`] is the process: it registers the host with the controller
//! (services whose `realserver_selector` matches its labels adopt it as a
//! backend) and keeps the host configured; [`host`] is what DR and TUN need
//! on a realserver (VIP on `lo` / `tunl0`, ARP and reverse-path sysctls) and
//! the code that sets it up and undoes it, through `lb_hostnet` (which also
//! probes the host's own endpoints for the services' health checks); [`conns`]
//! counts the connections a graceful drain waits for.

pub mod agent;
pub mod conns;
pub mod host;
pub mod metrics;
