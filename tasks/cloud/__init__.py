"""The cloud: Auto Scaling and EC2 (the Cloud port's adapters) and readiness checks.

==============  ===============================================================
module          what is inside
==============  ===============================================================
boto3_cloud     Boto3Cloud: the real adapter, scoped to one Auto Scaling Group
fake_cloud      FakeCloud: an in-memory group with the same contract
readiness       the optional HTTP readiness check (WARMPOOL_READY_URL)
==============  ===============================================================
"""
