//! Any bytes from a socket line or an MQTT payload: parsing must never panic, and an accepted
//! request must respect the limits.
#![no_main]

use edgellm_protocol::{ParseLimits, Request, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = ParseLimits { max_prompt_bytes: 4096, max_new_tokens: 512 };
    match parse_request(data, limits, || "fallback".into()) {
        Ok(Request::Generate(r)) => {
            assert!(r.prompt.len() <= 4096);
            assert!(r.params.max_tokens.is_none_or(|m| (1..=512).contains(&m)));
            assert!(edgellm_protocol::valid_id(&r.id));
        }
        // A refusal names the request only by a valid id, and never carries a raw newline.
        Err(refused) => {
            assert!(refused.id.as_deref().is_none_or(edgellm_protocol::valid_id));
            assert!(!refused.rejection.message.contains('\n'));
        }
        Ok(_) => {}
    }
});
