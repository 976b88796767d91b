//! Pages of the listing answers (`ListServices`, `ListRealServers`,
//! `GetStatus`): services in name order, at most `MAX_PAGE` of them, the
//! next page resuming after the last name of the one before. A listing of
//! 10,000 services would otherwise be one message over gRPC's 4 MiB.
//!
//! The token is the last service name of the page: a listing resumes in
//! the right place even if services came or went between its pages.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use lb_proto::model::Service;
use lb_proto::FieldError;

/// Services per page when the request does not say.
pub(super) const DEFAULT_PAGE: u32 = 1000;
/// The most services a page may ask for (10 realservers each stay well
/// under the message limit).
pub(super) const MAX_PAGE: u32 = 5000;

/// Where a page starts and how long it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Page {
    size: usize,
    after: Option<String>,
}

impl Page {
    /// From a request's `page_size` and `page_token`.
    pub(super) fn of(size: u32, token: &str) -> Result<Page, FieldError> {
        if size > MAX_PAGE {
            return Err(FieldError::new(
                "page_size",
                format!("{size} is more than {MAX_PAGE}"),
            ));
        }
        let size = if size == 0 { DEFAULT_PAGE } else { size };
        Ok(Page {
            size: size as usize,
            after: (!token.is_empty()).then(|| token.to_string()),
        })
    }

    /// This page of `services` among those `keep` accepts, and the token of
    /// the next page (empty: this is the last).
    pub(super) fn of_services<'a>(
        &self,
        services: &'a BTreeMap<String, Arc<Service>>,
        keep: impl Fn(&Service) -> bool,
    ) -> (Vec<&'a Service>, String) {
        let from = match &self.after {
            Some(after) => Bound::Excluded(after.as_str()),
            None => Bound::Unbounded,
        };
        let mut rest = services
            .range::<str, _>((from, Bound::Unbounded))
            .map(|(_, s)| &**s)
            .filter(|s| keep(s));
        let page: Vec<&Service> = rest.by_ref().take(self.size).collect();
        let next = match (rest.next(), page.last()) {
            (Some(_), Some(last)) => last.name.clone(),
            _ => String::new(),
        };
        (page, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_proto::pb;

    fn services(n: usize) -> BTreeMap<String, Arc<Service>> {
        (0..n)
            .map(|i| {
                let s = Service::try_from(pb::Service {
                    name: format!("s{i:03}"),
                    virtual_address: Some(pb::service::VirtualAddress::Endpoint(pb::Endpoint {
                        address: format!("10.0.{}.{}", i / 250, i % 250 + 1),
                        port: 80,
                        protocol: "tcp".into(),
                    })),
                    ..Default::default()
                })
                .unwrap();
                (s.name.clone(), Arc::new(s))
            })
            .collect()
    }

    #[test]
    fn pages_cover_every_service_once_in_name_order() {
        let all = services(25);
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = Page::of(10, &token).unwrap();
            let (items, next) = page.of_services(&all, |_| true);
            assert!(items.len() <= 10);
            seen.extend(items.iter().map(|s| s.name.clone()));
            if next.is_empty() {
                break;
            }
            token = next;
        }
        let names: Vec<String> = all.keys().cloned().collect();
        assert_eq!(seen, names);
        // An exact multiple ends without an empty extra page.
        let (items, next) = Page::of(25, "").unwrap().of_services(&all, |_| true);
        assert_eq!((items.len(), next.as_str()), (25, ""));
        // A filter pages over what it keeps (s007, s017, s027 of 30).
        let thirty = services(30);
        let (items, next) = Page::of(2, "")
            .unwrap()
            .of_services(&thirty, |s| s.name.ends_with('7'));
        assert_eq!(
            items.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["s007", "s017"]
        );
        assert_eq!(next, "s017");
    }

    #[test]
    fn a_page_too_long_is_refused_naming_the_field() {
        let e = Page::of(MAX_PAGE + 1, "").unwrap_err();
        assert_eq!(e.to_string(), "page_size: 5001 is more than 5000");
        assert_eq!(Page::of(0, "").unwrap().size, DEFAULT_PAGE as usize);
    }
}
