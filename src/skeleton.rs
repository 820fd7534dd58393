//! `include_skeleton!`: brings a skeleton that libbpf-cargo generated in the
//! calling crate's OUT_DIR in as a module, with the lints generated code
//! cannot follow turned off. Used by lbctl and by the lab and benchmark
//! crates for their own BPF programs.

/// `include_skeleton!(module, "file.skel.rs")` declares `pub mod module`
/// holding OUT_DIR/file.skel.rs of the crate that invokes it.
#[macro_export]
macro_rules! include_skeleton {
    ($(#[$attr:meta])* $module:ident, $file:literal) => {
        $(#[$attr])*
        #[allow(
            clippy::all,
            non_camel_case_types,
            non_snake_case,
            dead_code,
            unused_imports
        )]
        pub mod $module {
            include!(concat!(env!("OUT_DIR"), "/", $file));
        }
    };
}
