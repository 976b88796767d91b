//! Multi-process tests of the control plane: real `lb-controller` processes on
//! 127.0.0.1, driven by `lbctl`, grpcurl and gRPC clients.

mod admins;
mod backup;
mod bad_input;
mod cert_reload;
mod cluster;
mod dashboard;
mod fence;
mod floating;
mod grpcurl;
mod import;
mod join;
mod limits;
mod metrics;
mod netns;
mod ownership;
mod package;
mod rate;
mod realserver;
mod resume;
mod scale;
mod security;
mod single_node;
mod systemd;
mod vm_runner;
mod watch;
