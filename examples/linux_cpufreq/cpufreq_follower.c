/* cpufreq_follower.c - see cpufreq_follower.h. */
#define _POSIX_C_SOURCE 200809L

#include "cpufreq_follower.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int cpufreq_read_khz(const char *path, uint32_t *khz) {
  char text[32];
  char *end;
  unsigned long long value;
  FILE *file = fopen(path, "r");
  size_t length;
  if (file == NULL) {
    return -1;
  }
  length = fread(text, 1, sizeof text - 1, file);
  fclose(file);
  text[length] = '\0';
  value = strtoull(text, &end, 10);
  if (end == text || (*end != '\n' && *end != '\0') || value < 1u || value > UINT32_MAX) {
    return -1;
  }
  *khz = (uint32_t)value;
  return 0;
}

static void *follow(void *argument) {
  cpufreq_follower_t *follower = (cpufreq_follower_t *)argument;
  uint32_t last = 0, khz;
  struct timespec deadline;
  pthread_mutex_lock(&follower->lock);
  while (!follower->stop) {
    pthread_mutex_unlock(&follower->lock);
    /* A failed read (the CPU went offline, a driver reload) keeps the last level. */
    if (cpufreq_read_khz(follower->path, &khz) == 0 && khz != last) {
      last = khz;
      follower->on_change(khz, follower->context);
    }
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_nsec += (long)(follower->period_us % 1000000ul) * 1000l;
    deadline.tv_sec += (time_t)(follower->period_us / 1000000ul) + deadline.tv_nsec / 1000000000l;
    deadline.tv_nsec %= 1000000000l;
    pthread_mutex_lock(&follower->lock);
    if (!follower->stop) {
      pthread_cond_timedwait(&follower->wake, &follower->lock, &deadline);
    }
  }
  pthread_mutex_unlock(&follower->lock);
  return NULL;
}

int cpufreq_follower_start(cpufreq_follower_t *follower, const char *path, unsigned long period_us,
                           cpufreq_callback_t on_change, void *context) {
  uint32_t khz;
  if (cpufreq_read_khz(path, &khz) != 0) {
    return -1;
  }
  follower->path = path;
  follower->period_us = period_us;
  follower->on_change = on_change;
  follower->context = context;
  follower->stop = 0;
  pthread_mutex_init(&follower->lock, NULL);
  pthread_cond_init(&follower->wake, NULL);
  if (pthread_create(&follower->thread, NULL, follow, follower) != 0) {
    pthread_cond_destroy(&follower->wake);
    pthread_mutex_destroy(&follower->lock);
    return -1;
  }
  return 0;
}

void cpufreq_follower_stop(cpufreq_follower_t *follower) {
  pthread_mutex_lock(&follower->lock);
  follower->stop = 1;
  pthread_cond_signal(&follower->wake);
  pthread_mutex_unlock(&follower->lock);
  pthread_join(follower->thread, NULL);
  pthread_cond_destroy(&follower->wake);
  pthread_mutex_destroy(&follower->lock);
}
