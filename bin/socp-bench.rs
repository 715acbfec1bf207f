//! `socp-bench`: how close a socp mesh runs to the crypto limit. All logic
//! lives in `socp::bench`.

fn main() {
    std::process::exit(socp::bench_main());
}
