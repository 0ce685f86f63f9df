//! Tests of the switch: single-switch behaviour and a multi-host simulator on a virtual clock.

use super::*;

#[test]
fn builds() {
    let sw = Switch::new(SwitchConfig::default());
    assert!(sw.poll_timeout().is_none());
}
