#!/usr/bin/env bash
# Build the application image and start its database.
set -euo pipefail

docker build \
  --build-arg VERSION=1.0 \
  -t acme/app:dev \
  -f Dockerfile .

docker run -d --name db -e POSTGRES_PASSWORD=example -v pgdata:/var/lib/postgresql/data \
  -p 5432:5432 postgres:16 && echo "database started"

docker tag acme/app:dev registry.example.com/acme/app:dev
crane copy docker.io/library/alpine:3.19.1 registry.example.com/mirror/alpine:3.19.1
git clone https://deploy:Sup3rS3cret@git.example.com/acme/app.git /tmp/app
