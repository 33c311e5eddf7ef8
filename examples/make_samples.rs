//! Writes the sample workbooks: `cargo run --example make_samples [-- DIR]` (default `samples/`),
//! or a large G/L export for the benchmark: `cargo run --example make_samples -- --gl-rows N FILE`.

mod samples;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--gl-rows") {
        let n: usize = args
            .get(1)
            .and_then(|n| n.parse().ok())
            .expect("--gl-rows N FILE");
        let file = args.get(2).expect("--gl-rows N FILE");
        let s = samples::gl_export(n, n / 10_000);
        std::fs::write(file, &s.bytes).expect("write");
        println!(
            "{file}: {} line items, {} bytes",
            s.lines.len(),
            s.bytes.len()
        );
        return;
    }
    let dir = args.first().cloned().unwrap_or_else(|| "samples".into());
    std::fs::create_dir_all(&dir).expect("create dir");
    let gl = samples::gl_export(120, 2);
    std::fs::write(format!("{dir}/sap_fbl3n.xlsx"), &gl.bytes).expect("write");
    let tb = samples::trial_balance(40);
    std::fs::write(format!("{dir}/trial_balance.xlsx"), &tb.bytes).expect("write");
    println!(
        "{dir}/sap_fbl3n.xlsx: {} line items, {} rejected; {dir}/trial_balance.xlsx: {} accounts",
        gl.lines.len(),
        gl.rejected.len(),
        tb.lines.len()
    );
}
