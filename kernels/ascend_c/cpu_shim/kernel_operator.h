// Drop-in for CANN's <kernel_operator.h> when kernels are compiled with g++ on the host (see ascendc_cpu_shim.h).
#pragma once
#include "ascendc_cpu_shim.h"
