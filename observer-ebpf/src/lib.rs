#![no_std]
// This file exists to enable the library target, so `observer` can name this crate as a build dependency.
