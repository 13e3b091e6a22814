//! Project automation: `cargo xtask <task>`.
fn main() -> anyhow::Result<()> {
    Ok(())
}
