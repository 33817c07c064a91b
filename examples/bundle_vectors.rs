//! Regenerates the bundle test vectors: `cargo run --example bundle_vectors -- DIR`
//! (normally `bundle-format/vectors`). Review the diff before committing: the committed
//! vectors are the truth the tests check against.

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "bundle-format/vectors".to_string());
    match ferry::dev::bundle_vectors::generate(std::path::Path::new(&dir)) {
        Ok(()) => println!("wrote test vectors to {dir}"),
        Err(e) => {
            eprintln!("error: cannot write test vectors to {dir}: {e}");
            std::process::exit(1);
        }
    }
}
