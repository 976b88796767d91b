//! lb-controller integration tests.

mod storage_suite;
