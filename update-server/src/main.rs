//! `slipway-server`: the update server. Not built yet (issue 5).

fn main() {
    eprintln!("slipway-server: not built yet; the update server lands with its own issue");
    std::process::exit(2);
}
