//! A fix for tract's matrix-kernel selection, carried here until tract has it.
//!
//! tract-linalg 0.23.9 on x86_64 keeps a 4-bit (Q4_0) weight packed for its 32x1 matrix-vector
//! kernel and ships a panel extractor that unpacks such a panel to f32 for the wider 32x3 kernel.
//! But the extractor's output format is declared with a 32-byte alignment and the fma kernels'
//! f32 packing with 256, so the two never match and every prompt token runs through the 32x1
//! kernel on its own: prefill costs one matrix-vector product per token. Registering the same
//! extractor with the kernels' alignment (an over-aligned scratch panel, the same bytes) lets
//! tract pick 32x1 for one token and 32x3 for a chunk, with one unpacking per panel.
//!
//! aarch64 needs nothing: there the extractor and the kernels already agree.

#[cfg(target_arch = "x86_64")]
mod x86_64 {
    use tract_linalg::isa::Arch;
    use tract_linalg::mmm::PanelExtractor;
    use tract_linalg::mmm_routines::MmmExtractor;
    use tract_linalg::pack::Packing;

    /// The alignment of the fma f32 kernels' packed weights (`fma_mmm_f32_32x3`).
    const FMA_PANEL_ALIGNMENT: usize = 256;

    fn q40_to_f32_for_fma_kernels() -> PanelExtractor {
        let mut extractor = tract_linalg::x86_64::panel_extract::packed_32_q40_to_f32.clone();
        extractor.name = "edgellm_packed_32_q40_to_f32_a256".into();
        extractor.to = f32::packing(32).align(FMA_PANEL_ALIGNMENT);
        extractor
    }

    inventory::submit! {
        MmmExtractor { target: Arch::X86_64, make: q40_to_f32_for_fma_kernels }
    }

    fn q40_to_f32_for_avx512_kernels() -> PanelExtractor {
        let mut extractor = tract_linalg::x86_64::panel_extract::packed_32_q40_to_f32.clone();
        extractor.name = "edgellm_packed_32_q40_to_f32_a512".into();
        extractor.to = f32::packing(32).align(512);
        extractor
    }

    inventory::submit! {
        MmmExtractor { target: Arch::X86_64, make: q40_to_f32_for_avx512_kernels }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use tract_linalg::WeightType;
    use tract_linalg::block_quant::Q4_0;
    use tract_linalg::mmm::Query;
    use tract_onnx::prelude::*;

    /// Without the extractor the only fast kernel for a Q4_0 weight is the 32x1 matrix-vector
    /// one; with it, a kernel that multiplies several prompt tokens per pass is on offer.
    #[test]
    fn a_q4_weight_can_use_a_multi_column_kernel() {
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            return;
        }
        let query = Query {
            weight: WeightType::BlockQuant(Box::new(Q4_0)),
            activation: f32::datum_type(),
            accumulators: tvec!(f32::datum_type()),
            store: Some(f32::datum_type()),
            allow_extractor: true,
            m: Some(576),
            k: Some(576),
            n: Some(64),
        };
        let suitable = tract_linalg::MmmDispatch::native().suitable(&query);
        let wide: Vec<String> = suitable
            .iter()
            .filter(|(kernel, _, _)| kernel.nr() > 1 && kernel.arch().is_some())
            .map(|(kernel, _, _)| kernel.name().to_string())
            .collect();
        assert!(wide.iter().any(|name| name.starts_with("fma_mmm_f32_32x")), "wide kernels for Q4_0: {wide:?}");
    }
}
