//! The `pgshift` binary: everything is in the library, starting at [`pgshift::cli::main`].

fn main() {
    pgshift::cli::main()
}
