//! Classify one image with a converted model and print the top 5 as
//! `label<TAB>probability` lines, best first.
//!
//! ```text
//! cargo run --release --example classify -- weights/digits.safetensors examples/images/digit_3.png
//! ```

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, image] = args.as_slice() else {
        eprintln!("usage: classify MODEL.safetensors IMAGE");
        return ExitCode::from(2);
    };
    let run = || -> vmamba_rt::Result<()> {
        let model = vmamba_rt::VMamba::load(model)?;
        for (label, prob) in model.classify_file(image, 5)? {
            println!("{label}\t{prob:.6}");
        }
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("classify: {e}");
            ExitCode::FAILURE
        }
    }
}
