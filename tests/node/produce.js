#!/usr/bin/env node
// A wsupload producer in another language, following docs/wire-contract.md to the letter
// with celery-node (pinned in package.json): what the wire-contract tests run, and a recipe.
//
//   echo '[{"job_id": "…", "source": "/media/a.png", "options": {"dedup": true}}]' | node produce.js
//
// Environment, named as the worker names it: REDIS_URL (the job documents), WSUPLOAD_BROKER_URL
// (redis://… or amqp://…; default REDIS_URL), WSUPLOAD_QUEUE (default wsupload),
// WSUPLOAD_RESULT_TTL in seconds (default 604800). Prints each job id once the broker has its
// message; exits 1 with one line on stderr when anything fails.
"use strict";

const celery = require("celery-node");
const Redis = require("ioredis");

const TASK = "wsupload.upload";
const GIVE_UP_MS = 30000;

function fail(error) {
  const text = error instanceof Error ? error.message : String(error);
  process.stderr.write(`produce.js: ${text.replace(/\s+/g, " ").trim()}\n`);
  process.exit(1);
}

function readJobs() {
  let jobs;
  try {
    jobs = JSON.parse(require("fs").readFileSync(0, "utf8"));
  } catch (error) {
    fail(`stdin is not JSON: ${error.message}`);
  }
  const valid = (job) =>
    job && typeof job.job_id === "string" && job.job_id && typeof job.source === "string" && job.source;
  if (!Array.isArray(jobs) || !jobs.every(valid)) {
    fail('stdin must be a JSON array of {"job_id": string, "source": string, "options"?: object}');
  }
  return jobs;
}

// Contract step 2: the queued document, written before the message is sent (never after:
// it would overwrite what a quick worker already wrote).
function queuedDocument(job) {
  return JSON.stringify({
    job_id: job.job_id,
    status: "queued",
    source: job.source,
    attempts: 0,
    result: null,
    error: null,
    created_at: new Date().toISOString(), // ISO-8601 UTC with milliseconds and Z
    started_at: null,
    finished_at: null,
    expires_at: null,
  });
}

// celery-node 0.5.9's AMQP broker declares a classic queue named like the worker's on connect
// and before every publish (plus an exchange named "default"). RabbitMQ refuses that for the
// worker's quorum queue (PRECONDITION_FAILED, inequivalent arg 'x-queue-type') and closes the
// channel. The contract asks an AMQP producer to declare nothing: a passive declare checks the
// queue is there (NOT_FOUND if no worker ever declared it, rather than a message dropped
// unroutable). celery-node also publishes on a plain channel, so nothing tells it the broker
// has the message: a confirm channel does.
function declareNothingAndConfirm(broker) {
  broker.channel = broker.connect.then(async (connection) => {
    connection.on("error", () => {}); // the operation it broke rejects, saying why
    const channel = await connection.createConfirmChannel();
    channel.on("error", () => {});
    channel.assertQueue = (queue) => channel.checkQueue(queue);
    channel.assertExchange = async (exchange) => ({ exchange });
    return channel;
  });
}

// sendTask publishes later and drops the promise: keep each one, to know when the broker has
// the message, and hand celery-node one that never rejects (its chain has no handler).
function keepPublishes(broker) {
  const published = [];
  const publish = broker.publish.bind(broker);
  broker.publish = (...args) => {
    const sent = publish(...args);
    published.push(sent);
    return sent.catch(() => undefined);
  };
  return published;
}

async function connectRedis(url) {
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null });
  let refused = null; // ioredis says why in an event, and only "Connection is closed." from connect()
  redis.on("error", (error) => {
    refused = error;
  });
  await redis.connect().catch((error) => fail(`cannot reach Redis (REDIS_URL): ${(refused || error).message}`));
  return redis;
}

async function main() {
  const jobs = readJobs();
  const redisUrl = process.env.REDIS_URL || "redis://127.0.0.1:6379/0";
  const brokerUrl = process.env.WSUPLOAD_BROKER_URL || redisUrl;
  const queue = process.env.WSUPLOAD_QUEUE || "wsupload";
  const ttl = Number.parseInt(process.env.WSUPLOAD_RESULT_TTL || "604800", 10);
  if (!(ttl > 0)) fail("WSUPLOAD_RESULT_TTL must be a whole number of seconds");
  const amqp = /^amqps?:/.test(brokerUrl);

  const documents = await connectRedis(redisUrl);
  // The result backend is never read here; celery-node wants one, so it is the documents' Redis.
  const client = celery.createClient(brokerUrl, redisUrl, queue);
  if (amqp) declareNothingAndConfirm(client.broker);
  const published = keepPublishes(client.broker);
  await client.isReady().catch((error) => fail(`broker: ${error.message}`)); // AMQP: the queue is there

  const keys = jobs.map((job) => `wsupload:result:${job.job_id}`);
  const writing = documents.multi();
  jobs.forEach((job, n) => writing.set(keys[n], queuedDocument(job), "EX", ttl));
  await writing.exec();
  try {
    for (const job of jobs) {
      const kwargs = job.options ? { options: job.options } : {};
      client.sendTask(TASK, [job.job_id, job.source], kwargs, job.job_id); // contract step 3
    }
    while (published.length < jobs.length) await new Promise((resolve) => setImmediate(resolve));
    await Promise.all(published);
    if (amqp) await (await client.broker.channel).waitForConfirms();
  } catch (error) {
    // Not sent (or not confirmed): no "queued" document for a job no worker will see.
    await documents.del(...keys).catch(() => undefined);
    fail(`broker: ${error.message}`);
  }
  for (const job of jobs) process.stdout.write(`${job.job_id}\n`);
  await client.disconnect();
  await documents.quit();
}

process.on("unhandledRejection", fail);
process.on("uncaughtException", fail);
setTimeout(() => fail(`not done within ${GIVE_UP_MS / 1000} s`), GIVE_UP_MS).unref();
main().catch(fail);
