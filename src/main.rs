//! The `voxgate` binary.
fn main() {}
