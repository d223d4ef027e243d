//! The client's IP address, as seen through trusted proxies.
//!
//! Behind the nginx gateway every connection comes from the gateway, so the
//! peer address alone would throttle all users as one. The gateway sets
//! `X-Real-IP` (seed `proxy_params.conf`); we believe it only when the peer
//! is one of `TRUSTED_PROXIES`, or any client could pick its own address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use ipnet::IpNet;

use crate::error::ApiError;

/// The networks whose forwarding headers are believed.
#[derive(Clone, Debug)]
pub struct TrustedProxies(pub Arc<Vec<IpNet>>);

impl TrustedProxies {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl<S> FromRequestParts<S> for ClientIp
where
    TrustedProxies: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("the server was started without connect info")))?;
        Ok(ClientIp(resolve(peer, &parts.headers, &TrustedProxies::from_ref(state))))
    }
}

fn resolve(peer: IpAddr, headers: &axum::http::HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    if !trusted.contains(peer) {
        return peer;
    }
    let header_ip = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some(ip) = header_ip("x-real-ip").and_then(|v| v.trim().parse().ok()) {
        return ip;
    }
    // X-Forwarded-For lists hops left to right; the rightmost address that
    // is not one of our proxies is the first one we did not add ourselves.
    if let Some(list) = header_ip("x-forwarded-for") {
        for hop in list.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) if trusted.contains(ip) => continue,
                Ok(ip) => return ip,
                Err(_) => break,
            }
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;

    use super::*;

    fn trusted() -> TrustedProxies {
        TrustedProxies(Arc::new(vec!["127.0.0.0/8".parse().unwrap(), "10.0.0.0/8".parse().unwrap()]))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap())).collect()
    }

    #[test]
    fn an_untrusted_peer_cannot_choose_its_address() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(resolve(peer, &headers(&[("x-real-ip", "1.2.3.4")]), &trusted()), peer);
    }

    #[test]
    fn a_trusted_gateway_passes_the_real_ip_on() {
        let ip = resolve("127.0.0.1".parse().unwrap(), &headers(&[("x-real-ip", "198.51.100.7")]), &trusted());
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn forwarded_for_skips_our_own_proxies_from_the_right() {
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.2.3")]);
        assert_eq!(resolve("127.0.0.1".parse().unwrap(), &h, &trusted()), "198.51.100.7".parse::<IpAddr>().unwrap());
    }
}
