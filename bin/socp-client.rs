//! `socp-client`: the SOCP v1.3 terminal client. All logic lives in the `socp` crates.

fn main() {
    std::process::exit(socp::client_main());
}
