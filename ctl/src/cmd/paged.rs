//! Whole listings from the controller's pages: lbctl asks for page after
//! page (each under the message limit, however many services there are)
//! and shows them as one answer, with the revision of the last page.

use lb_proto::client::Controller;
use lb_proto::pb;
use lb_proto::pb::service_admin_client::ServiceAdminClient;

use crate::api;

/// Every service.
pub(crate) async fn services(
    ctl: &mut Controller,
    stale: bool,
) -> anyhow::Result<pb::ListServicesResponse> {
    let mut all = pb::ListServicesResponse::default();
    let mut page_token = String::new();
    loop {
        let req = pb::ListServicesRequest {
            stale,
            page_size: 0,
            page_token,
        };
        let page = call!(ctl, ServiceAdminClient, list_services, req)?;
        all.services.extend(page.services);
        all.revision = page.revision;
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

/// Every realserver, or those of one service.
pub(crate) async fn realservers(
    ctl: &mut Controller,
    service: String,
    stale: bool,
) -> anyhow::Result<pb::ListRealServersResponse> {
    let mut all = pb::ListRealServersResponse::default();
    let mut page_token = String::new();
    loop {
        let req = pb::ListRealServersRequest {
            service: service.clone(),
            stale,
            page_size: 0,
            page_token,
        };
        let page = call!(ctl, ServiceAdminClient, list_real_servers, req)?;
        all.realservers.extend(page.realservers);
        all.revision = page.revision;
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

/// The fabric's status, narrowed to a service or a VIP when given: the
/// services of every page, the rest (VIPs, directors) from the last.
pub(crate) async fn status(
    ctl: &mut Controller,
    service: String,
    vip: String,
) -> anyhow::Result<pb::FabricStatus> {
    let mut services = Vec::new();
    let mut page_token = String::new();
    loop {
        let req = pb::GetStatusRequest {
            page_size: 0,
            page_token,
            service: service.clone(),
            vip: vip.clone(),
        };
        let mut page = call!(ctl, ServiceAdminClient, get_status, req)?;
        services.append(&mut page.services);
        if page.next_page_token.is_empty() {
            page.services = services;
            return Ok(page);
        }
        page_token = std::mem::take(&mut page.next_page_token);
    }
}
