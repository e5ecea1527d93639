fn main() {
    pgshift::cli::main()
}
