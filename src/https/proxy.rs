//! The proxy for outbound calls.

use tracing::warn;

use super::ProxyConfig;
use crate::env::Env;

/// The proxy for outbound calls, from the environment the agent was given
/// (see the module contract). Go's `ProxyFromEnvironment` rules, which the
/// other AWS SDKs and client-go follow.
pub fn proxy_from(env: &Env) -> ProxyConfig {
    let var = |name: &str| {
        env.var(name)
            .or_else(|| env.var(&name.to_ascii_lowercase()))
            .filter(|v| !v.is_empty())
    };
    let (http, https, all) = (var("HTTP_PROXY"), var("HTTPS_PROXY"), var("ALL_PROXY"));
    let configured = match (http, https.or(all.clone()), all) {
        (None, None, _) => return ProxyConfig::disabled(),
        (Some(h), Some(s), _) if h == s => ProxyConfig::all(h),
        (Some(h), None, _) => ProxyConfig::http(h),
        (None, Some(s), None) => ProxyConfig::https(s),
        (None, Some(s), Some(_)) => ProxyConfig::all(s),
        // Different proxies per scheme: only the process environment can
        // express that to the SDK's proxy matcher, and outside tests the
        // agent's environment is the process's.
        (Some(_), Some(_), _) => return ProxyConfig::from_env(),
    };
    match configured {
        Ok(proxy) => match var("NO_PROXY") {
            Some(no) => proxy.no_proxy(no),
            None => proxy,
        },
        Err(err) => {
            warn!(error = %err, "ignoring an invalid proxy URL from the environment");
            ProxyConfig::disabled()
        }
    }
}
