//! The one integration-test binary: every test gets its own PostgreSQL database.

mod cli;
mod etl;
mod etl_process;
mod helpers;
mod lifecycle;
mod outage;
mod process;
mod queue;
mod rest;
#[path = "../../examples/samples/mod.rs"]
mod samples;
