//! Transports: where requests come from and answers go back. Each turns its wire format into
//! [`edgellm_protocol`] requests and hands them to the daemon's admission queue.

pub mod http;
pub mod mqtt;
pub mod socket;
