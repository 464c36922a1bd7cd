//! What agents and operators hand the server as text: tunnel messages,
//! join tokens, the legacy node-passwd file, quantities, durations.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<rk3s_api::tunnel::AgentMessage>(data);
    let s = String::from_utf8_lossy(data);
    let _ = rk3sd::credentials::token::Token::parse(&s);
    let _ = rk3sd::credentials::nodepassword::parse_legacy(&s);
    let _ = rk3sd::kube::quantity::milli(&s);
    let _ = rk3sd::config::parse_duration(&s);
    let _ = rk3sd::config::normalize_server_url(&s);
    let _ = rk3sd::registry::batch::Schedule::parse(&s);
});
