//! The `perpetua` command-line tool (lands with issue 8).

fn main() -> anyhow::Result<()> {
    println!("perpetua {}", env!("CARGO_PKG_VERSION"));
    Ok(())
}
