//! The `ferry` binary: all logic lives in the library; this only hands over argv.

fn main() {
    std::process::exit(ferry::cli::main());
}
