//! One module per command family; each turns flags into requests (with
//! [`crate::spec`]), calls the controller and prints with [`crate::output`].

pub(crate) mod admin;
pub(crate) mod cluster;
pub(crate) mod director;
pub(crate) mod import;
pub(crate) mod node;
pub(crate) mod paged;
pub(crate) mod pki;
pub(crate) mod realserver;
pub(crate) mod service;
pub(crate) mod status;
pub(crate) mod token;
pub(crate) mod watch;
