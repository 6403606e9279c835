"""The appliance on a cloud: cloud-init user-data for each image, and deploy/destroy on OpenStack.

`topology` says which image needs which peer and which ports it opens; `userdata` renders the
#cloud-config that writes /etc/appliance/appliance.env; `deploy` and `destroy` drive openstacksdk
(the `cloud` extra).
"""
