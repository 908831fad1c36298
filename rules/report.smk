# Stage 8: memory report (predicted vs measured), summary and plots, built only from small artifacts
# (metadata/metrics JSON, parquet weights, benchmark and memory TSVs): deleting Zarr chunks or checkpoints
# does not stop them from being regenerated (see README, "Reports from frozen artifacts").


rule build_reports:
    input:
        prompts=PROMPTS,
        weights=WEIGHTS,
        meta=WEIGHTS_META,
        rm=RM_METRICS,
        grpo=expand(GRPO_METRICS, sampler=SAMPLERS),
        draws=expand(GRPO_DRAWS, sampler=SAMPLERS),
        comparison=COMPARISON,
    output:
        summary=report(f"{REPORTS}/summary.md", caption="../report/summary.rst", category="Summary"),
        memory_md=report(f"{REPORTS}/memory.md", caption="../report/memory.rst", category="Memory"),
        memory_json=f"{REPORTS}/memory.json",
        plots=report(
            expand(f"{REPORTS}/{{plot}}", plot=REPORT_PLOTS),
            caption="../report/plots.rst",
            category="Plots",
        ),
    log:
        f"{LOGS}/reports.log",
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=10,
    script:
        "../scripts/reports.py"
