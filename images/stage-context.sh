#!/usr/bin/env bash
# Assemble one image's Docker build context under DEST from images/IMAGE/, images/common/ and the
# build outputs that image needs (hard links where possible: the TensorFlow wheel is big).
# Usage: images/stage-context.sh IMAGE DEST
# Inputs by environment, each needed only by the images that use it:
#   DEPS_DIR      requirements.txt, constraints.txt and wheels/  (producer, kafka, ml-server)
#   DIST_DIR      the appliance wheel                            (producer, kafka, ml-server)
#   MODEL         the graph artifact, X.onnx with X.json beside it                (ml-server)
#   CAMERA_IMAGES the cameras' images, a .tar.gz from `appliance dataset pack`  (producer)
#   KAFKA_LIBS    the broker's jars                               (kafka)
#   FERRETDB_BIN  the FerretDB binary                             (mongodb, ferretdb flavor)
set -euo pipefail

image=${1:?usage: stage-context.sh IMAGE DEST}
dest=${2:?usage: stage-context.sh IMAGE DEST}
here=$(cd "$(dirname "$0")" && pwd)

need() {
  [[ -e ${!1:-} ]] || { echo "stage-context.sh: $image needs $1 (got '${!1:-}')" >&2; exit 1; }
}

# Hard links cost nothing; a copy where links cannot be made (another file system).
link_tree() {
  mkdir -p "$2"
  cp -al "$1/." "$2/" 2>/dev/null || cp -a "$1/." "$2/"
}

rm -rf "$dest"
mkdir -p "$dest"
# The image's own files; the Ansible playbook beside them is no part of the build.
find "$here/$image" -maxdepth 1 -type f ! -name playbook.yml -exec cp -p {} "$dest/" \;
mkdir -p "$dest/common"
cp -p "$here/common/"* "$dest/common/"

case $image in
  producer | kafka | ml-server)
    need DEPS_DIR
    need DIST_DIR
    link_tree "$DEPS_DIR" "$dest/deps"
    mkdir -p "$dest/dist"
    cp -p "$DIST_DIR"/appliance-*.whl "$dest/dist/"
    ;;
esac

case $image in
  producer)
    need CAMERA_IMAGES
    mkdir -p "$dest/cameras"
    cp -p "$CAMERA_IMAGES" "$dest/cameras/cifar10-test.tar.gz"
    ;;
  ml-server)
    need MODEL
    # The graph artifact: the image has OpenVINO and no TensorFlow, so no X.keras or X.npz.
    suffix=${MODEL##*.}
    [[ $suffix == onnx ]] || { echo "stage-context.sh: MODEL must be a graph artifact," \
      "X.onnx (appliance model export-onnx writes one from X.keras or X.npz); got $MODEL" >&2; exit 1; }
    meta=${MODEL%.*}.json
    [[ -f $meta ]] || { echo "stage-context.sh: $meta (the model's metadata) is missing" >&2; exit 1; }
    mkdir -p "$dest/model"
    ln "$MODEL" "$dest/model/resnet50.$suffix" 2>/dev/null || cp -p "$MODEL" "$dest/model/resnet50.$suffix"
    cp -p "$meta" "$dest/model/resnet50.json"
    ;;
  kafka)
    need KAFKA_LIBS
    link_tree "$KAFKA_LIBS" "$dest/kafka-libs"
    ;;
  mongodb)
    if [[ -n ${FERRETDB_BIN:-} ]]; then
      need FERRETDB_BIN
      # Debug symbols are a third of the binary and no use in an image.
      strip -o "$dest/ferretdb" "$FERRETDB_BIN" 2>/dev/null || cp -p "$FERRETDB_BIN" "$dest/ferretdb"
      chmod 755 "$dest/ferretdb"
    fi
    ;;
esac
du -sh "$dest" | awk -v image="$image" '{print "context " image ": " $1}'
