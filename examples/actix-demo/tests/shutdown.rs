//! The demo as its users run it: a process, with clients that are slow to
//! send their requests, stopped with SIGTERM (`keysmith_tests::demo_cases`).

keysmith_tests::demo_cases_tests!(env!("CARGO_BIN_EXE_example-actix"));
