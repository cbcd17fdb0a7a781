//! Writes the validation tables:
//! - `results/estimator-bias/`: on the enumerable softmax toy, the exact bias
//!   of BRAIn, DPG and GDC++ gradients against ∇ E[KL(α‖β)] (self-normalised
//!   KL) and against ∇ KL(posterior‖policy), and their exact variance, for
//!   several n;
//! - `results/estimator-variance/`: on the BRAIn paper's Gaussian toy, the
//!   gradient mean and variance against the proposal mean μ.
//!
//! `cargo run -p validation --bin estimator-tables [-- OUT_DIR]` (default `results`).

use std::fmt::Write as _;
use std::path::PathBuf;

use align_core::io::write_atomic;
use validation::discrete::{distance, exact_moments, Toy};
use validation::{gaussian, VARIANTS};

fn csv(header: &[&str], rows: &[Vec<String>]) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header)?;
    for r in rows {
        w.write_record(r)?;
    }
    Ok(w.into_inner()?)
}

fn markdown(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!(
        "| {} |\n|{}\n",
        header.join(" | "),
        " --- |".repeat(header.len())
    );
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out
}

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "results".into()));

    // Exact bias and variance on the softmax toy.
    let header = [
        "n",
        "estimator",
        "bias_vs_grad_sn_kl",
        "bias_vs_grad_kl",
        "variance",
    ];
    let mut rows = Vec::new();
    for n in [2, 3, 4, 6] {
        let toy = Toy {
            n,
            ..Toy::standard()
        };
        let sn_kl = toy.exact_sn_kl_gradient();
        let kl = toy.exact_kl_gradient();
        for (name, baseline) in VARIANTS {
            let (mean, variance) = exact_moments(&toy, baseline);
            rows.push(vec![
                n.to_string(),
                name.to_string(),
                format!("{:.6}", distance(&mean, &sn_kl)),
                format!("{:.6}", distance(&mean, &kl)),
                format!("{:.6}", variance),
            ]);
        }
    }
    let dir = out.join("estimator-bias");
    write_atomic(&dir.join("bias.csv"), &csv(&header, &rows)?)?;
    let note = "Softmax policy over 4 outputs (validation::discrete::Toy::standard), every tuple of n proposal samples enumerated: \
                exact L2 bias of each estimator's expected gradient against the gradient of the expected self-normalised KL and of \
                KL(posterior‖policy), and the exact trace of its covariance.\n\n";
    write_atomic(
        &dir.join("bias.md"),
        format!("{note}{}", markdown(&header, &rows)).as_bytes(),
    )?;
    print!("{}", markdown(&header, &rows));

    // Gradient variance against proposal mismatch on the Gaussian toy.
    let mus = [-2.0, -1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0];
    let replicates = 100_000;
    let mut header = vec!["proposal_mean".to_string()];
    for (name, _) in VARIANTS {
        header.push(format!("{name} mean"));
        header.push(format!("{name} variance"));
    }
    let mut rows = Vec::new();
    for (i, &mu) in mus.iter().enumerate() {
        let mut row = vec![format!("{mu}")];
        for (name, baseline) in VARIANTS {
            let (mean, var) =
                gaussian::gradient_stats(mu, 8, replicates, baseline, 1000 + i as u64);
            let _ = name;
            row.push(format!("{mean:.4}"));
            row.push(format!("{var:.4}"));
        }
        rows.push(row);
    }
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let dir = out.join("estimator-variance");
    write_atomic(&dir.join("variance.csv"), &csv(&header, &rows)?)?;
    let note = format!(
        "Gaussian toy of the BRAIn paper: posterior N(0,1), policy N(θ,1) at θ = 1, proposal N(μ,1), n = 8, {replicates} replicates \
         per cell (seeded). The exact gradient of KL(posterior‖policy) is θ = 1.\n\n"
    );
    write_atomic(
        &dir.join("variance.md"),
        format!("{note}{}", markdown(&header, &rows)).as_bytes(),
    )?;
    print!("\n{}", markdown(&header, &rows));
    Ok(())
}
