//! Lets the binary find libtorch at run time without LD_LIBRARY_PATH (an rpath to the
//! directory torch-sys linked against), and keeps libtorch_cuda linked: the linker's
//! default --as-needed drops it, since nothing names its symbols, and CUDA then looks
//! unavailable even on a GPU machine.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    if std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
