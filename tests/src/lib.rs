//! Test harness: namespaces, hosts and containers built and torn down per test.
