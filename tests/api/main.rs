//! The one integration-test binary: every test gets its own PostgreSQL database.

mod bounds;
mod browser;
mod cli;
mod console;
mod cosmos;
mod datasets;
mod enqueue;
mod etl;
mod etl_failures;
mod etl_process;
mod extractors;
mod helpers;
mod history;
mod isolation;
mod lifecycle;
mod outage;
mod partition;
mod process;
mod push;
mod queue;
mod readme;
mod release;
mod rest;
#[path = "../../examples/samples/mod.rs"]
mod samples;
mod sources;
mod sources_process;
mod tidy;
mod tidy_layout;
mod transitions;
mod worker_edges;
