"""tvaccine: Targeted Vaccine (Liu et al., arXiv 2410.09760) and its baselines on the Hugging Face stack."""

__version__ = "0.2.2"

CITATION = (
    "@article{liu2024targeted,\n"
    "  title={Targeted Vaccine: Safety Alignment for Large Language Models against Harmful Fine-Tuning "
    "via Layer-wise Perturbation},\n"
    "  author={Liu, Guozhi and Lin, Weiwei and Huang, Tiansheng and Mo, Ruichao and Mu, Qi and Shen, Li},\n"
    "  journal={arXiv preprint arXiv:2410.09760},\n"
    "  year={2024}\n"
    "}"
)
