cd <checkout of 188d3f6>
export WANDB_MODE=disabled
R=rapid
CK="<OUT>/rapid-seed0/0_algo=rapid,experiment=paper-gsm8k-easy,seed=0,train.resume=auto/checkpoints/round-000064/model"
$R eval experiment=paper-gsm8k-easy seed=0 eval.temperature=0.7 hydra.run.dir=<OUT>/t07/base
$R eval experiment=paper-gsm8k-easy seed=0 eval.temperature=0.7 "model.path='$CK'" hydra.run.dir=<OUT>/t07/rapid-8192
