//! Test frames built with etherparse.
