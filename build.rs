//! `sqlx::migrate!` embeds `migrations/` at compile time; without this, adding or editing a
//! migration does not rebuild the crate and a stale set is applied.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
