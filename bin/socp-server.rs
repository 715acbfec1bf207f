//! `socp-server`: a SOCP v1.3 server. All logic lives in the `socp` crates.

fn main() {
    std::process::exit(socp::server_main());
}
