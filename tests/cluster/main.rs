//! Several `flowcast serve` instances on one PostgreSQL ledger (they need a
//! server: each test skips, saying so, when `FLOWCAST_TEST_POSTGRES` is
//! unset). A test binary of its own: cargo runs test binaries one after
//! another, so the other tests' load does not bend the timing these measure
//! (the busiest second of creates, as the simulator counts them).

#[allow(dead_code)]
#[path = "../it/helpers.rs"]
mod helpers;
#[allow(dead_code)]
#[path = "../it/served.rs"]
mod served;

mod instances;
